"""Models: the networks and the contract every stage shares.

``models.contract`` (tensor names, layouts, ``ModelInfo``, pre-processing; numpy only),
``models.build`` (``build_model`` from config, ``build_from_checkpoint``), ``models.checkpoint``
(reading a checkpoint), ``models.posenet`` / ``models.backbones`` (the networks). This file imports
nothing, so the ONNX Runtime path can read the contract without importing torch.
"""
