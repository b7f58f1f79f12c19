from plasma_bench.cli import main

raise SystemExit(main())
