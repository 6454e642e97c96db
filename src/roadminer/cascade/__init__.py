"""The cascade: early-exit router, log-odds consensus, stacking fits (fit, stack) and the eval / cascade-fit /
cascade-stack commands. May import training and everything below it."""
