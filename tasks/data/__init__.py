"""Data: get the three files (the Hub pinned to a revision, a folder, or the offline sample), check them against
the dataset contract (pandera), and read them for the stages after."""
