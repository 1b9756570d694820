"""The `mousse` command line: Typer app and Rich views over the `mousse` engine."""
