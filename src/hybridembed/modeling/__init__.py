"""The model: building and loading SentenceTransformer models from backbones, decoders, positions, LoRA, tiny test models, tokenizer extension, portable folders.

Modules: `model` (build_model, load_model, write_metadata), `backbones`, `positions`, `lora`, `tiny`,
`tokenizer_extend`, `folder_compat`. Nothing is imported here.
"""
