"""Data prep: raw Python sources -> filtered, deduplicated, decontaminated parquet shards."""
