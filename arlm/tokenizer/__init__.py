"""The image tokenizer: autoencoder, quantizers wiring, training, and the commands around it."""
