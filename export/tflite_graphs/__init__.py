"""Per-method TensorFlow mappings for the TFLite export (export/tflite_export.py).

Each module here registers its method's layers in ``tflite_export.LAYERS`` and, where
needed, its device graph in ``tflite_export.GRAPHS`` (with the ``layer``/``graph``
decorators). Every module of this package is imported before a graph is converted, so a
new method adds one file here and edits nothing else.
"""
