"""PANNs tagging service: FastAPI app serving model bundles through ONNX Runtime.

Imports neither torch nor ``training``: a model bundle (see ``service.core.card``) is the only
contract with the training side.
"""
