// rabbitmq-c's headers, wherever this system's version puts them (0.11+:
// <rabbitmq-c/...>, older: top level), when the build found the library
// (WARREN_HAVE_RABBITMQ_C, set by benchmarks/CMakeLists.txt; 0 otherwise).
//
//   #include "amqp_c.h"
//   #if WARREN_HAVE_RABBITMQ_C
//   amqp_connection_state_t conn = amqp_new_connection();
//   #endif

#ifndef WARREN_BENCHMARKS_AMQP_C_H_
#define WARREN_BENCHMARKS_AMQP_C_H_

#ifndef WARREN_HAVE_RABBITMQ_C
#define WARREN_HAVE_RABBITMQ_C 0
#endif
#if WARREN_HAVE_RABBITMQ_C
#if __has_include(<rabbitmq-c/amqp.h>)
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp.h>
#include <amqp_tcp_socket.h>
#endif
#endif

#endif  // WARREN_BENCHMARKS_AMQP_C_H_
