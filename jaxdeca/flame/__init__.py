"""jaxdeca.flame."""
