"""Model builders returning nn.Modules that honour the model contract (native-stride logits)."""
