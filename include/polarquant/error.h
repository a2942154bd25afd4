// Errors crossing the library boundary. Every failure the library reports is a polarquant::Error
// carrying a message a user can act on (what was wrong, where, what was expected); the library
// never aborts on bad input.
#pragma once

#include <stdexcept>
#include <string>

namespace polarquant {

enum class ErrorKind {
  kInvalidArgument,  // an option, shape or value outside what the function accepts
  kFormat,           // a malformed, truncated or corrupt buffer or file
  kIo,               // a file could not be opened, read or written
  kState,            // a call that is not valid now (unknown or freed sequence, ...)
  kUnsupported,      // a valid request this build or device cannot serve
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

[[noreturn]] inline void throw_invalid(const std::string& message) {
  throw Error(ErrorKind::kInvalidArgument, message);
}
[[noreturn]] inline void throw_format(const std::string& message) {
  throw Error(ErrorKind::kFormat, message);
}
[[noreturn]] inline void throw_io(const std::string& message) {
  throw Error(ErrorKind::kIo, message);
}
[[noreturn]] inline void throw_state(const std::string& message) {
  throw Error(ErrorKind::kState, message);
}

}  // namespace polarquant
