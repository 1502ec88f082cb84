"""matforge.finetune: fine-tune an exported backbone on a small dataset. Never imports Ray."""
