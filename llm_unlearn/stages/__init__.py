"""The protocol's stages; each module has a config dataclass, ``make_parser()``, ``main(config)`` and ``cli(argv)``;
each writes its artifact plus its resolved ``config.yaml`` into its ``output_dir`` and a ``.complete`` marker last."""
