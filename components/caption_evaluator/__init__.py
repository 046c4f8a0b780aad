"""CaptionEvaluator: BLEU and loss on eval/test, the blessing gate, TFLite parity."""
