from toolcallstore.cli import main

raise SystemExit(main())
