"""What applies the models: sampling prompts into images, judging them, rewards, preference data, evaluation,
export and the model card."""
