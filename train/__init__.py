"""The default model: captioned emoji scenes, its training stages, the independent judge and the evaluation."""
