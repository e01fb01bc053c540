"""Using a tuned model: classify images from Python (:func:`load`), export it to ONNX, serve it over HTTP."""

from dapt_lightning.inference.classifier import Classifier, ImageToLogits, Predictions, load

__all__ = ["Classifier", "ImageToLogits", "Predictions", "load"]
