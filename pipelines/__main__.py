from labelmill.pipelines.cli import main

raise SystemExit(main())
