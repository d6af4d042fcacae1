"""jaxdeca.data."""
