"""jaxdeca.assets."""
