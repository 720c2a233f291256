"""One module per `pythia-interp` subcommand; each defines `add_parser(subparsers)`."""
