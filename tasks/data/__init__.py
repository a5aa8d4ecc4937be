"""Data: get the three files (the Hub pinned to a revision, a folder, or the offline ``sample/``), read them and
check them against the dataset contract (pandera)."""
