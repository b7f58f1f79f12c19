from plasma.cli import main

raise SystemExit(main())
