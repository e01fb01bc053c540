"""Built-in dataset readers, one module per dataset, each declaring its ``RECORD`` (see ``data.registry``)."""
