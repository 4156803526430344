"""The VTP method on a timm ViT, torch only: gate sites, gates, plans, width profiles, compaction, save/load."""
