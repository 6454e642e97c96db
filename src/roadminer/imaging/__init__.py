"""Images in and out: bounded decoding, validator-parity augmentation and the one ``validator_view``, drawn
street scenes. May import protocol and core."""
