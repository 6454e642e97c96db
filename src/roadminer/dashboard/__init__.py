"""The reward/MCC dashboard: data from the state layer, SVG charts, the aiohttp app, history replay. May
import cascade, validator and everything below them."""
