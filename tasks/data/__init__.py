"""Data: get the three files (the Hub pinned to a revision, a folder, or the offline sample), check them against
the dataset contract (pandera), and read them for the stages after.

- ``ingest``: the stage and the record of what came in; ``sources``: the three kinds of source, each fetched;
- ``hub``: the Hugging Face Hub client (resolve a revision, download verified); ``hub_retry``: errors, retries;
- ``contract``: the dataset contract; ``schemas`` and ``validate`` check it; ``reading``: the tables;
- ``sample/``: the synthetic generator.
"""
