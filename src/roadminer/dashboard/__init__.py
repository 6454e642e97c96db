"""The reward/MCC dashboard: data from the state layer, SVG charts, the aiohttp app, history replay, the
labelling page and the reward-forensics panels. May
import cascade, validator and everything below them."""
