"""jaxdeca.render."""
