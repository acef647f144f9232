// PointSub module
