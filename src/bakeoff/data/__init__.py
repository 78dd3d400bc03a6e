"""The prepare stage: read the sources, check every record, filter, template and split (``prepare``)."""
