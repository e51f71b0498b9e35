"""The YAML configs (`tokenizer/*.yaml`, `prior/*.yaml`), installed as package data so `--config small`
works from a wheel as well as from a checkout."""
