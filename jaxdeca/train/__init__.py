"""jaxdeca.train."""
