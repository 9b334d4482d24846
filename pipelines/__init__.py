"""Dataset pipelines shipped with maskgen (one TOML file per dataset)."""
