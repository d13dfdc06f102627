"""Model loading, chat formatting, tokenisation and hooked generation."""
