"""The model tiers: the ``Tier`` base and registry (base), classifier, colour cue, detector, OCR, fast
engines (engines/) and VLM judges (vlm/). May import imaging, protocol and core."""
