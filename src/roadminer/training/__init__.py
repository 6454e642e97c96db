"""Training and evaluation: dataset reading, fine-tuning, calibration, grouped CV, colour-cue fit, copy-paste
synthesis, detector training, model cards. May import models, state, chain, imaging, protocol and core."""
