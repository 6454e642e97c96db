"""The reference subnet's ``ImageSynapse`` (natix v2.0.4), shared by the scripts that run in the 9.12 venv.

Import it after patching ``bittensor.utils.networking`` (importing bittensor comes first here). No
``from __future__ import annotations``: Axon.attach inspects real annotation objects.
"""

import bittensor as bt
import pydantic


class ImageSynapse(bt.Synapse):
    """The reference subnet's synapse (natix v2.0.4), reproduced field for field."""

    testnet_label: int = -1
    image: str = pydantic.Field(title="Image", description="A base64 encoded image", default="", frozen=False)
    prediction: float = pydantic.Field(
        title="Prediction", description="P(roadwork)", default=-1.0, frozen=False
    )

    def deserialize(self) -> float:
        return self.prediction
