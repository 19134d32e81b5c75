"""Instruction fine-tuning (SFT) data: conversations -> chat template + labels -> packed rows -> training batches.

Modules: `conversations` (the three input formats, one internal form), `markers` (the turn start/end pieces of
each tokenizer), `chat_template` (the openPangu template text, `render_chat`), `labels` (ids and labels of one
conversation), `packing` (greedy knapsack into rows), `outputs` (Megatron and MindRecord files, metadata),
`pipeline` (a whole preprocessing or merge run), `dataset` (rows -> the training network's four columns),
`cli` (`pangu sft-preprocess`). See docs/finetune.md.
"""
