"""Byte formats infra and operators share: WebDataset shards and field codecs, the engines' item payload."""
