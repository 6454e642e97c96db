"""The validator side: challenges, our dendrite-compatible client, reward + EMA, weights, the neuron and the
simulator. May import training and everything below it (never the miner)."""
