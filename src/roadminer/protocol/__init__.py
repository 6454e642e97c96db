"""The wire formats: SN72 ImageSynapse + dendrite headers, btauth/1, sr25519 hotkeys. Pure (no server, no
model, no torch); may import core only."""
