"""The bundled reasoning model: tasks with exact answers, its tokenizer, training, weights.

Nothing here imports torch at import time; ``train`` and ``benchmark`` do when called.
"""
