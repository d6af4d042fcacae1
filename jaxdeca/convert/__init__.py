"""jaxdeca.convert."""
