"""The miner's routes, one module per protocol (SN72 ``ImageSynapse``, btauth/1) over the shared request
pipeline, plus the operations routes (health, metrics). May import protocol, imaging, core and the miner's
own backend and pipeline."""
