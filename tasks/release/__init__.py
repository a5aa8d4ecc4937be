"""The release stage: a registered version becomes a tested image in the registry and, at one fenced commit
point (the ledger), the champion; converge then brings the alias, tags, notes and GitHub release into line."""
