"""The toy EvoLLM-JP world: arithmetic word problems in English and Japanese (data first; the
zoo of a Japanese LM and two English math LMs is built on it in a later step)."""
