# plot.gp - busbw against size, log-log, one line per library (perf/compare.sh).
#
#   gnuplot -e "datafile='x.dat'; outfile='x.png'; plottitle='allreduce, np 4, tcp'" perf/plot.gp
#
# datafile: whitespace columns  size(B)  duet  mpi  gloo  (busbw in GB/s; NaN
# where a library has no number). Optional: ncols=3 to leave out the Gloo line.
if (!exists("datafile")) datafile = 'busbw.dat'
if (!exists("outfile")) outfile = 'busbw.png'
if (!exists("plottitle")) plottitle = 'busbw'
if (!exists("ncols")) ncols = 4

set terminal pngcairo size 900,600 enhanced font 'sans,11'
set output outfile
set title plottitle
set logscale xy
set xlabel 'size (bytes; K = 1024)'
set ylabel 'busbw (GB/s)'
set autoscale xfix
set offsets graph 0.03, graph 0.03, 0, 0
set xtics nomirror ('8' 8, '32' 32, '128' 128, '512' 512, '2K' 2048, '8K' 8192, \
    '32K' 32768, '128K' 131072, '512K' 524288, '2M' 2097152, '8M' 8388608, '32M' 33554432, \
    '128M' 134217728)
set mxtics 1
set format y '10^{%T}'
set grid xtics ytics mytics
set key top left
set datafile missing 'NaN'
plot datafile using 1:2 with linespoints lw 2 pt 7 title 'duet', \
     '' using 1:3 with linespoints lw 2 pt 5 title 'Open MPI', \
     for [c=4:ncols] '' using 1:c with linespoints lw 2 pt 9 title 'Gloo (tcp)'
