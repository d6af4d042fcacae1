"""jaxdeca.apps."""
