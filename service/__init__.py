"""PANNs tagging service: FastAPI app serving model bundles through ONNX Runtime.

Imports neither torch nor ``training``: a model bundle (see ``service.card``) is the only
contract with the training side.
"""
